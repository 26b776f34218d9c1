"""Training data: annotation records, seek indexes, the overlapped-window builder, samples, collation."""
