import sys

from streaming_vlm.cli import main

sys.exit(main())
