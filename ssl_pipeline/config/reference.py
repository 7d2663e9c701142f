"""The configuration reference: a markdown table generated from the params schema, with the
comments of params.yaml as each knob's documentation; the README embeds it between markers
(`ssl-pipeline config --write-readme README.md`, kept in sync by tests/pipeline/test_readme.py)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Union

from pydantic import BaseModel

from ssl_pipeline.config.schema import PARAMS_FILE, Params

README_BEGIN = "<!-- CONFIG-REFERENCE:BEGIN"
README_END = "<!-- CONFIG-REFERENCE:END -->"


def readme_with_reference(readme: str) -> str:
    """README text with the block between the CONFIG-REFERENCE markers regenerated from the schema."""
    start = readme.index(README_BEGIN)
    start = readme.index("-->", start) + len("-->")
    end = readme.index(README_END)
    return readme[:start] + "\n" + reference_markdown() + "\n" + readme[end:]


def params_comments(path: str | Path = PARAMS_FILE) -> dict[str, str]:
    """Dotted key -> the trailing comment on its line in params.yaml (the knobs' documentation)."""
    comments: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    path = Path(path)
    if not path.exists():
        return comments
    for line in path.read_text().splitlines():
        body = line.split("#", 1)[0].rstrip()
        if not body.strip() or ":" not in body or body.lstrip().startswith("-"):
            continue
        indent = len(body) - len(body.lstrip())
        key = body.strip().split(":", 1)[0].strip()
        stack = [(i, k) for i, k in stack if i < indent] + [(indent, key)]
        if "#" in line:
            comments[".".join(k for _, k in stack)] = line.split("#", 1)[1].strip()
    return comments


def _annotation_name(ann) -> str:
    args = getattr(ann, "__args__", None) or ()
    origin = getattr(ann, "__origin__", None)
    if origin is Literal:
        return " \\| ".join(json.dumps(a) for a in args)
    if origin is Union or type(ann).__name__ == "UnionType":
        return " \\| ".join(_annotation_name(a) for a in args)
    return getattr(ann, "__name__", None) or str(ann).replace("typing.", "")


def _type_name(field) -> str:
    bounds = [f"{op} {getattr(m, attr)}" for m in field.metadata for attr, op in
              (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")) if getattr(m, attr, None) is not None]
    return _annotation_name(field.annotation) + (f" ({', '.join(bounds)})" if bounds else "")


def reference_markdown(params_file: str | Path = PARAMS_FILE) -> str:
    """Configuration reference generated from the schema, with params.yaml's comments."""
    comments = params_comments(params_file)
    lines = ["| key | type | schema default | what it does (from params.yaml) |", "|---|---|---|---|"]

    def walk(prefix: str, model: type[BaseModel]) -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            key = f"{prefix}{name}"
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(key + ".", ann)
                continue
            default = field.get_default(call_default_factory=True)
            doc = comments.get(key, "").replace("|", "\\|")
            lines.append(f"| `{key}` | {_type_name(field)} | `{json.dumps(default)}` | {doc} |")

    walk("", Params)
    return "\n".join(lines)
