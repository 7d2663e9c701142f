"""What `ssl-pipeline data ...` prints: an import's result, a removal, the status of every dataset."""
from __future__ import annotations

from pathlib import Path

SHOWN_SKIPS = 50   # more are in the import record (data.raw_dir/imports.json)
STATES = {"ok": "ok", "modified": "changed since its `dvc add`", "deleted": "missing: `ssl-pipeline data pull`",
          "untracked": "not tracked by DVC", "missing": "missing", "not in cache": "not in the DVC cache"}


def _skips(skipped: list[list[str]], records_file: Path) -> list[str]:
    lines = [f"  skipped {path}: {reason}" for path, reason in skipped[:SHOWN_SKIPS]]
    if len(skipped) > SHOWN_SKIPS:
        lines.append(f"  ... and {len(skipped) - SHOWN_SKIPS} more, all listed in {records_file}")
    return lines


def _places(files: dict[str, int]) -> str:
    if set(files) <= {""}:
        return ""
    return " (" + ", ".join(f"{place} {n}" for place, n in sorted(files.items())) + ")"


def import_lines(result, raw: Path, md5s: dict[str, str]) -> list[str]:
    r = result.record
    dataset = raw / r.dataset
    lines = [f"import {r.id}: {r.source} -> {dataset}: {r.added} files added{_places(r.files)}, "
             f"{r.already_present} already there, {len(r.skipped)} skipped"]
    lines += _skips(r.skipped, raw / "imports.json")
    demo = [x for x in result.replaced if x.is_demo]
    if demo:
        emptied = "".join(f" and emptied {raw / d} (the demo's other half)" for d in result.emptied)
        lines.append(f"replaced the demo digits in {dataset}{emptied}; `ssl-pipeline data demo --replace` "
                     "brings the demo back")
    others = [x for x in result.replaced if not x.is_demo]
    if others:
        lines.append(f"--replace removed from {dataset}: " + "; ".join(f"{x.describe()}, {x.added} files" for x in others))
    if r.dataset == "labeled":
        test = ("given (test/)" if result.test_split == "given"
                else "carved by `prepare` (data.test_fraction, seeded, class-balanced)")
        lines.append(f"classes ({len(result.classes)}): {', '.join(result.classes)}; test split: {test}")
    lines += [f"{path}: DVC md5 {md5}" for path, md5 in md5s.items()]
    lines.append(f"to version it: git add {raw}/*.dvc {raw / 'imports.json'} && git commit")
    return lines


def removal_lines(removals, dry_run: bool) -> list[str]:
    verb = "would remove" if dry_run else "removed"
    lines = []
    for item in removals:
        total = sum(item.files.values())
        lines.append(f"{verb} {item.record.describe()}: {total} files{_places(item.files)}")
        lines += [f"  {folder}" for folder in item.folders]
    return lines


def status_lines(dvc_state: dict, imports: dict[str, list[dict]], raw: Path) -> list[str]:
    lines = []
    for path, info in dvc_state["datasets"].items():
        name = Path(path).name
        state = STATES.get(info["state"], info["state"])
        md5 = f", DVC md5 {info['md5']}" if info["md5"] else ""
        lines.append(f"{path}: {info['files']} files{md5}, {state}")
        for item in imports.get(name, []):
            what = "the demo digits" if item["source"] == "demo" else item["source"]
            note = "" if item["intact"] else " (not as imported: see `dvc status`)" if info["present"] else ""
            lines.append(f"  import {item['id']}  {item['time']}  {what}: {item['files']} files, md5 "
                         f"{item['md5'] or '-'} (added {item['added']}, {item['already_present']} already there, "
                         f"{item['skipped']} skipped){note}")
        if not imports.get(name) and info["present"]:
            lines.append("  (no import records)")
    remote = dvc_state.get("remote")
    if remote:
        local = "://" not in remote["url"]
        where = " (a folder of this clone only: a backup, not a way to share)" if local else ""
        lines.append(f"DVC remote: {remote['name']} -> {remote['url']}{where}")
    else:
        lines.append("DVC remote: none configured")
    lines.append(f"import records: {raw / 'imports.json'}")
    return lines
