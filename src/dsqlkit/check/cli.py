"""``dsqlkit check`` on the command line: report, ``--fix``, ``--verify``; text or JSON.

Exit status, for CI (docs/check.md): 0 nothing DSQL would refuse; 1 findings, every one
fixable by ``--fix`` without a change of meaning; 3 some need review (none unfixable); 4 some are
unfixable; 5 ``--verify``: the endpoint refused a statement at run time; 2 usage error or an
unreadable file. With ``--fix`` the status describes the fixed output: 0 exact, 3 it holds
changes to review, 4 it still holds statements DSQL refuses.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dsqlkit.check.engine import MODES, Mode, findings_of, run_rules
from dsqlkit.check.findings import FIXABLE, JSON_SCHEMA_VERSION, NEEDS_REVIEW, Finding
from dsqlkit.check.fix import fix_checked
from dsqlkit.check.script import split_script

EXIT_CLEAN, EXIT_FIXABLE, EXIT_USAGE, EXIT_REVIEW, EXIT_UNFIXABLE, EXIT_RUNTIME = 0, 1, 2, 3, 4, 5


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="SQL files to check ('-' reads standard input)")
    parser.add_argument("--format", choices=("text", "json"), default="text",
                        help="output format (default: text)")
    parser.add_argument("--mode", choices=MODES, default="statement",
                        help="how the migration runner sends a file: one statement at a time "
                             "(default), the whole file as one query, or one transaction per "
                             "file")
    parser.add_argument("-1", "--single-transaction", dest="mode", action="store_const",
                        const="file", help="same as --mode file (psql -1)")
    parser.add_argument("--fix", action="store_true",
                        help="print the files rewritten for DSQL (or write them with --write)")
    parser.add_argument("--write", action="store_true",
                        help="with --fix: rewrite the files in place")
    parser.add_argument("--verify", action="store_true",
                        help="run the (fixed) files on an ephemeral dsqlkit local and report "
                             "what it refuses at run time")


def run(args: argparse.Namespace) -> int:
    if args.write and not args.fix:
        print("dsqlkit check: --write needs --fix", file=sys.stderr)
        return EXIT_USAGE
    mode: Mode = args.mode
    reports: list[dict[str, Any]] = []
    codes: list[int] = []
    fixed_texts: list[tuple[str, str]] = []
    for name in args.files:
        try:
            text = _read(name)
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            print(f"dsqlkit check: cannot read {name}: {reason}", file=sys.stderr)
            codes.append(EXIT_USAGE)
            continue
        report, code, fixed = _check_file(name, text, mode, args.fix)
        reports.append(report)
        codes.append(code)
        if fixed is not None:
            fixed_texts.append((name, fixed))
    if args.verify:
        codes.append(_verify(reports, fixed_texts if args.fix else None, args, mode))
    _output(reports, args, mode, fixed_texts)
    return _worst(codes)


def _check_file(name: str, text: str, mode: Mode,
                fix: bool) -> tuple[dict[str, Any], int, str | None]:
    checked = run_rules(split_script(text), mode)
    result = fix_checked(text, checked, mode)
    findings = findings_of(checked, text, name, result.labels)
    report: dict[str, Any] = {"file": name, "findings": findings, "text": text}
    if not fix:
        return report, _code(findings), None
    remaining = findings_of(run_rules(split_script(result.text), mode), result.text, name)
    report["fixed"] = {"remaining": remaining,
                       "changes": [{"line": findings_line(checked, text, i), "rule": n.rule,
                                    "label": n.label, "note": n.hint}
                                   for i, n in result.notes]}
    if remaining:
        code = EXIT_UNFIXABLE
    elif any(n.label == NEEDS_REVIEW for _, n in result.notes):
        code = EXIT_REVIEW
    else:
        code = EXIT_CLEAN
    return report, code, result.text


def findings_line(checked: Any, text: str, index: int) -> int:
    return text.count("\n", 0, checked.statements[index].start) + 1


def _code(findings: list[Finding]) -> int:
    if not findings:
        return EXIT_CLEAN
    labels = {f.label for f in findings}
    if labels == {FIXABLE}:
        return EXIT_FIXABLE
    return EXIT_REVIEW if NEEDS_REVIEW in labels and len(labels - {FIXABLE, NEEDS_REVIEW}) == 0 \
        else EXIT_UNFIXABLE


def _worst(codes: list[int]) -> int:
    order = [EXIT_CLEAN, EXIT_FIXABLE, EXIT_REVIEW, EXIT_UNFIXABLE, EXIT_RUNTIME, EXIT_USAGE]
    return max(codes, key=order.index, default=EXIT_CLEAN)


def _verify(reports: list[dict[str, Any]], fixed: list[tuple[str, str]] | None,
            args: argparse.Namespace, mode: Mode) -> int:
    from dsqlkit.check.verify import local_endpoint, verify_text

    texts = fixed if fixed is not None else [(r["file"], r["text"]) for r in reports]
    refused = False
    # One endpoint for all files: they form one schema, applied in order.
    with local_endpoint() as dsn:
        for report, (_, text) in zip(reports, texts, strict=True):
            errors = verify_text(text, dsn, mode)
            report["verify"] = errors
            refused = refused or bool(errors)
    return EXIT_RUNTIME if refused else EXIT_CLEAN


def _output(reports: list[dict[str, Any]], args: argparse.Namespace, mode: Mode,
            fixed: list[tuple[str, str]]) -> None:
    if args.fix and args.write:
        for name, text in fixed:
            if name != "-":
                Path(name).write_text(text, encoding="utf-8")
    if args.format == "json":
        doc = {"schema_version": JSON_SCHEMA_VERSION, "mode": mode, "files": [
            _json_report(r) for r in reports]}
        json.dump(doc, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
        return
    if args.fix and not args.write:
        for name, text in fixed:
            if len(fixed) > 1:
                sys.stdout.write(f"-- dsqlkit check --fix: {name}\n")
            sys.stdout.write(text)
    out = sys.stderr if args.fix and not args.write else sys.stdout
    total = 0
    for report in reports:
        for finding in report["findings"]:
            total += 1
            print(finding.format(), file=out)
        for error in report.get("verify", []):
            print(f"{report['file']}:{error.line}:{error.column}: run time: {error.sqlstate} "
                  f"{error.message}\n    {error.statement}", file=out)
    files = len(reports)
    print(f"{total} statement{'s' if total != 1 else ''} Aurora DSQL would refuse "
          f"({files} file{'s' if files != 1 else ''} checked)", file=sys.stderr)
    if args.fix:
        remaining = sum(len(r["fixed"]["remaining"]) for r in reports)
        review = sum(1 for r in reports for c in r["fixed"]["changes"]
                     if c["label"] == NEEDS_REVIEW)
        print(f"fixed output: {remaining} still refused, {review} changes need review",
              file=sys.stderr)
    if args.verify:
        refused = sum(len(r.get("verify", [])) for r in reports)
        print(f"verify on dsqlkit local: {refused} refused at run time", file=sys.stderr)


def _json_report(report: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"file": report["file"],
                           "findings": [f.as_json() for f in report["findings"]]}
    if "fixed" in report:
        out["fixed"] = {"remaining": [f.as_json() for f in report["fixed"]["remaining"]],
                        "changes": report["fixed"]["changes"]}
    if "verify" in report:
        out["verify"] = [asdict(e) for e in report["verify"]]
    return out


def _read(name: str) -> str:
    if name == "-":
        return sys.stdin.buffer.read().decode("utf-8-sig")
    with open(name, "rb") as fh:
        return fh.read().decode("utf-8-sig")
