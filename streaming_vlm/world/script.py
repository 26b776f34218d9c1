"""The synthetic stream world's script: what happens each second, what the commentator says, how to read it back.

Every second of a stream either is quiet, shows one **object** (a red, blue, yellow or black ball or bar, moving)
for exactly that second, or shows a **whistle** (the whole pitch flashes white; second 0 is always one, the
kick-off). The commentator calls each object in the second it is on screen and then announces the running
**score** in words: the number of goals (black balls) since the last whistle (``red bar! score two``;
``black ball! score three``); a whistle is called ``whistle! score zero``. The score is never drawn, so it can
only be known from earlier commentary (the goals that made it may be minutes back): the world's non-visible
fact. Quiet seconds have no words (the stream's `` ...`` marker). Scores are words, not digits, so they never
share tokens with the stream's ``Time=`` stamps.

The script is a pure function of ``(seed, WorldConfig)``, generated second by second, so a stream of any length
costs constant memory. ``parse_commentary`` turns commentary text back into calls; it is the single definition
of the world's grammar, used to score models.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from streaming_vlm.data.annotations import Word
from streaming_vlm.settings import DEFAULT_QUERY

COLOURS = ("red", "blue", "yellow", "black")
SHAPES = ("ball", "bar")
WHISTLE = "whistle"
GOAL = ("black", "ball")
"""The object that scores: the score goes up by one in the second it is on screen."""
QUERY = DEFAULT_QUERY
"""The instruction the demo model is trained and run with (the engine's default query)."""
_UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
          "seventeen eighteen nineteen").split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()


def score_word(n: int) -> str:
    """``n`` (0..99) in words: ``five``, ``twenty``, ``twenty-one``."""
    if not 0 <= n <= 99:
        raise ValueError(f"scores are 0..99, got {n}")
    if n < 20:
        return _UNITS[n]
    tens, unit = divmod(n, 10)
    return _TENS[tens - 2] + (f"-{_UNITS[unit]}" if unit else "")


_SCORE_VALUES = {score_word(n): n for n in range(100)}


@dataclass(frozen=True)
class WorldConfig:
    """How a stream looks and how busy it is. The defaults are the demo model's world."""

    size: int = 56
    """Frame width and height in pixels (a multiple of 28: 2x2 vision tokens per frame pair at 56)."""
    fps: int = 8
    """Video frame rate."""
    whistle_rate: float = 1 / 300
    """Probability that a second is a whistle."""
    density: float = 0.3
    """Probability that a second shows an object."""
    max_score: int = 9
    """A whistle always follows the goal that brings the score to this (so the demo's scores are one word)."""
    speed: float = 12.0
    """Object speed in pixels per second."""
    kickoff: bool = True
    """Second 0 is always a whistle (the kick-off), so every stream's first call announces the score (zero)."""

    def __post_init__(self) -> None:
        if self.size < 28 or self.size % 28:
            raise ValueError(f"size must be a positive multiple of 28, got {self.size}")
        if self.fps < 2:
            raise ValueError(f"fps must be >= 2, got {self.fps}")
        if not 0 <= self.density <= 1 or not 0 <= self.whistle_rate <= 1 or self.density + self.whistle_rate > 1:
            raise ValueError("density and whistle_rate must be probabilities with a sum <= 1")
        if not 1 <= self.max_score <= 99:
            raise ValueError(f"max_score must be in 1..99, got {self.max_score}")
        if not (math.isfinite(self.speed) and self.speed >= 0):
            raise ValueError(f"speed must be >= 0, got {self.speed}")


DEFAULT_WORLD = WorldConfig()


@dataclass(frozen=True)
class Event:
    """One second with something on screen."""

    second: int
    kind: str
    """``"object"`` or ``"whistle"``."""
    score: int
    """The score announced in this second (0 for a whistle)."""
    colour: str = ""
    shape: str = ""
    x: float = 0.0
    """Object centre at the start of the second, in pixels."""
    y: float = 0.0
    vx: float = 0.0
    """Velocity in pixels per second."""
    vy: float = 0.0

    @property
    def label(self) -> str:
        """What a correct call names: ``"red ball"`` or ``"whistle"``."""
        return WHISTLE if self.kind == WHISTLE else f"{self.colour} {self.shape}"

    @property
    def text(self) -> str:
        return f"{self.label}! score {score_word(self.score)}"


def events(seed: int, seconds: int, config: WorldConfig = DEFAULT_WORLD) -> Iterator[Event]:
    """The stream's events in time order, for seconds ``0 .. seconds-1`` (generated lazily)."""
    rng = np.random.default_rng([seed, 0x5EED])
    score, forced_whistle = 0, config.kickoff
    margin = config.size * 0.3
    for second in range(seconds):
        u = rng.random()
        if forced_whistle or u < config.whistle_rate:
            forced_whistle, score = False, 0
            yield Event(second, WHISTLE, 0)
        elif u < config.whistle_rate + config.density:
            angle = rng.uniform(0, 2 * math.pi)
            colour, shape = COLOURS[rng.integers(len(COLOURS))], SHAPES[rng.integers(len(SHAPES))]
            if (colour, shape) == GOAL:
                score += 1
                forced_whistle = score >= config.max_score
            yield Event(
                second,
                "object",
                score,
                colour=colour,
                shape=shape,
                x=float(rng.uniform(margin, config.size - margin)),
                y=float(rng.uniform(margin, config.size - margin)),
                vx=config.speed * math.cos(angle),
                vy=config.speed * math.sin(angle),
            )


def words(event: Event) -> list[Word]:
    """The commentary of ``event`` as timed words, all ending inside its second (so they belong to its chunk)."""
    parts = event.text.split()
    step = 0.8 / len(parts)
    t0 = event.second + 0.1
    return [Word(round(t0 + i * step, 3), round(t0 + (i + 1) * step, 3), w) for i, w in enumerate(parts)]


def transcript(seed: int, seconds: int, config: WorldConfig = DEFAULT_WORLD) -> Iterator[Word]:
    for event in events(seed, seconds, config):
        yield from words(event)


def corpus(config: WorldConfig = DEFAULT_WORLD) -> list[str]:
    """Every sentence the commentator can say (for building the demo tokenizer's vocabulary)."""
    lines = [f"{WHISTLE}! score {score_word(0)}"]
    for n in range(config.max_score + 1):
        lines += [f"{c} {s}! score {score_word(n)}" for c in COLOURS for s in SHAPES if (c, s) != GOAL or n > 0]
    return lines


# ---- reading commentary back ---------------------------------------------------------------------------------

_CALL = re.compile(
    r"(?P<label>whistle|(?:" + "|".join(COLOURS) + r") (?:" + "|".join(SHAPES) + r"))!?"
    r"(?: score (?P<score>" + "|".join(sorted(_SCORE_VALUES, key=len, reverse=True)) + r")\b)?"
)


@dataclass(frozen=True)
class Call:
    """One call read from commentary: what was named, and the score announced with it (None if missing)."""

    label: str
    score: int | None


@dataclass(frozen=True)
class Reading:
    calls: tuple[Call, ...]
    garbled: bool
    """Text that is not empty and not a sequence of well-formed calls."""


def parse_commentary(text: str) -> Reading:
    """Read one chunk's commentary. Calls are read wherever they are; anything else makes it garbled."""
    text = " ".join(text.replace("...", " ").split()).lower()
    calls, rest, pos = [], [], 0
    for m in _CALL.finditer(text):
        rest.append(text[pos : m.start()])
        pos = m.end()
        score = m.group("score")
        calls.append(Call(m.group("label"), _SCORE_VALUES[score] if score is not None else None))
    rest.append(text[pos:])
    leftover = "".join(rest).strip(" ,.!")
    return Reading(tuple(calls), garbled=bool(leftover))
