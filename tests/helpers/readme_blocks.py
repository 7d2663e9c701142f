"""The README's code blocks and the markers that tell the README test how to run them.

A marker is an HTML comment (invisible on GitHub) on the lines right above a fenced block:

    <!-- readme-test: skip: needs an S3 bucket and its credentials -->   reported as a skip with that reason
    <!-- readme-test: workspace: cifar -->      run in that workspace instead of "main" (the quick start's)
    <!-- readme-test: stop-when: serving deployment -->   a command that serves until Ctrl-C: once this
                                                text is printed, the block gets Ctrl-C (SIGINT), as a user would
    <!-- readme-test: port: 5001 -->            the block's port is replaced by a free one (tests share a machine)

Only ```bash and ```python blocks are code; other fences (diagrams, trees) are not run.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

MARKER = re.compile(r"^<!--\s*readme-test:\s*([a-z-]+)\s*:\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^```(\S*)\s*$")
CODE_LANGS = ("bash", "python")


@dataclass
class Block:
    index: int
    line: int          # 1-based line of the opening fence
    section: str
    lang: str
    code: str
    skip: str | None = None
    workspace: str = "main"
    stop_when: str | None = None
    port: int | None = None

    @property
    def id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.section.lower()).strip("-")[:40]
        return f"{self.index:02d}-{slug}"


def readme_blocks(text: str) -> list[Block]:
    """Every ```bash / ```python block of the README, in order, with its markers applied."""
    blocks: list[Block] = []
    section, markers, fence, body, start = "", {}, None, [], 0
    for number, line in enumerate(text.splitlines(), 1):
        if fence is not None:
            if line.startswith("```"):
                if fence in CODE_LANGS:
                    block = Block(len(blocks) + 1, start, section, fence, "\n".join(body) + "\n")
                    _apply(block, markers)
                    blocks.append(block)
                fence, body, markers = None, [], {}
            else:
                body.append(line)
            continue
        if line.startswith("## "):
            section = line[3:].strip()
        match_marker, match_fence = MARKER.match(line.strip()), FENCE.match(line)
        if match_marker:
            markers[match_marker.group(1)] = match_marker.group(2)
        elif match_fence:
            fence, start = match_fence.group(1), number
        elif line.strip():
            markers = {}   # a marker applies to the block right below it only
    return blocks


def _apply(block: Block, markers: dict[str, str]) -> None:
    for key, value in markers.items():
        if key == "skip":
            block.skip = value
        elif key == "workspace":
            block.workspace = value
        elif key == "stop-when":
            block.stop_when = value
        elif key == "port":
            block.port = int(value)
        else:
            raise ValueError(f"README line {block.line}: unknown readme-test marker {key!r}")


def commands(block: Block, program: str) -> list[list[str]]:
    """The argument lists of every `program ...` command in a bash block (comments, `\\` continuations,
    `&&`, `;`, `|` and `&` handled), without the program name."""
    text = block.code.replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars="&;|")
        lexer.whitespace_split, lexer.commenters = True, "#"
        words = list(lexer)
        command: list[str] = []
        for word in words + [";"]:
            if word and set(word) <= set("&;|"):
                if command and command[0] == program:
                    found.append(command[1:])
                command = []
            else:
                command.append(word)
    return found
