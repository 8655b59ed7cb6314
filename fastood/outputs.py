"""Score output files: CSV, JSON Lines and Parquet, resumable and crash-safe.

One row per scored image::

    path        the image file (as listed: relative paths stay relative)
    score       the detector's score, float32 value (higher = more in-distribution)
    pred        predicted ID class index (argmax over the ID labels); empty if the detector has none
    pred_label  that class's name; empty if the detector has no class names
    is_ood      ``score < threshold`` — only present when a threshold is set

How a run stays resumable (``fastood score`` and the distributed rank files):

* rows are appended to a **journal** batch by batch, each batch followed by
  ``flush`` + ``os.fsync``; for ``.csv`` / ``.jsonl`` outputs the journal is the
  output file itself, for ``.parquet`` (which cannot be appended to) it is
  ``<out>.partial.jsonl`` next to it;
* a resumed run reads the journal (and any finished output), **drops a truncated
  last record** (a crash in the middle of a write: no trailing newline, an
  unparsable or short row), rewrites the file without it atomically, and skips
  every path already present;
* :func:`finalize` writes the final output once (temp file + ``os.replace`` in the
  same directory), rows in the order of the input file list, one row per path.

CSV floats are written with Python's shortest round-trip ``repr``, so a float32
score reads back bit-exactly.

**File names that are not UTF-8** (legal on Linux: a name is bytes) are kept, losslessly,
in every format. In memory a path is a ``str`` with the undecodable bytes as lone
surrogates (``os.fsdecode``: byte ``0xff`` ↔ ``U+DCFF``), so ``os.fsencode(row["path"])``
gives the original bytes back. On disk:

* CSV: the original bytes, as they are (UTF-8 with ``surrogateescape``; such a file is
  then not valid UTF-8, as the output of ``ls`` is not; read it with
  ``encoding="utf-8", errors="surrogateescape"``);
* JSON Lines: the JSON escape of the surrogate (``"x\\udcff.png"``), plain ASCII; only
  the rows that need it are written with ``ensure_ascii``;
* Parquet (whose strings must be UTF-8): ``path`` holds the name with each bad byte
  replaced by U+FFFD (for display) and an extra ``path_bytes`` (binary) column, present
  only when some name needs it, holds the exact bytes; :func:`read_rows` restores them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from fastood._io import atomic_write

__all__ = [
    "FORMATS",
    "BASE_COLUMNS",
    "output_format",
    "columns_for",
    "require_pyarrow",
    "read_rows",
    "write_rows",
    "RowJournal",
    "journal_path",
    "rank_path",
    "finalize",
    "write_json_atomic",
    "path_key",
    "check_existing_output",
]

# Text outputs keep non-UTF-8 file names byte for byte (see the module docstring).
_ERRORS = "surrogateescape"

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}
BASE_COLUMNS = ("path", "score", "pred", "pred_label")


def output_format(path: str | os.PathLike) -> str:
    """``"csv"``, ``"jsonl"`` or ``"parquet"`` from the file suffix (ValueError otherwise)."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"output {str(path)!r}: unknown format {suffix or '(no suffix)'!r}; "
                         f"expected one of {', '.join(FORMATS)}")
    return FORMATS[suffix]


def columns_for(with_threshold: bool) -> tuple[str, ...]:
    """The output columns: ``path, score, pred, pred_label`` (+ ``is_ood`` with a threshold)."""
    return BASE_COLUMNS + (("is_ood",) if with_threshold else ())


def require_pyarrow():
    """Import pyarrow (and pyarrow.parquet), or raise ImportError saying how to get it."""
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError as exc:
        raise ImportError("Parquet output needs pyarrow: `pip install pyarrow` "
                          "(or write .csv / .jsonl instead)") from exc
    return pyarrow


def journal_path(out: str | os.PathLike) -> Path:
    """Where rows are appended while ``out`` is being produced (``out`` itself unless Parquet)."""
    out = Path(out)
    return out.with_name(out.name + ".partial.jsonl") if output_format(out) == "parquet" else out


def rank_path(out: str | os.PathLike, rank: int) -> Path:
    """Per-rank file of a distributed run: ``scores.csv`` → ``scores.rank{r}.csv``.

    Parquet outputs get JSON Lines rank files (``scores.rank{r}.jsonl``), because a
    rank file is appended to batch by batch.
    """
    out = Path(out)
    suffix = ".jsonl" if output_format(out) == "parquet" else out.suffix
    return out.with_name(f"{out.stem}.rank{rank}{suffix}")


# ----------------------------------------------------------------------------- values


def _fmt_cell(col: str, value: Any) -> str:
    if value is None:
        return ""
    if col == "score":
        return repr(float(value))
    if col == "is_ood":
        return "true" if value else "false"
    return str(value)


def _parse_row(col_values: dict[str, str]) -> dict[str, Any]:
    """Typed row from CSV strings (ValueError if malformed)."""
    row: dict[str, Any] = {}
    for col, v in col_values.items():
        if col == "path":
            if not v:
                raise ValueError("empty path")
            row[col] = v
        elif col == "score":
            row[col] = float(v)
        elif col == "pred":
            row[col] = int(v) if v != "" else None
        elif col == "pred_label":
            row[col] = v if v != "" else None
        elif col == "is_ood":
            if v not in ("", "true", "false"):
                raise ValueError(f"is_ood must be true/false, got {v!r}")
            row[col] = None if v == "" else v == "true"
        else:
            row[col] = v
    return row


def _check_json_row(obj: Any, columns: Sequence[str]) -> dict[str, Any]:
    if not isinstance(obj, dict) or not isinstance(obj.get("path"), str) or not obj["path"]:
        raise ValueError("not a row object with a 'path'")
    if not isinstance(obj.get("score"), (int, float)) or isinstance(obj.get("score"), bool):
        raise ValueError("'score' is not a number")
    return {c: obj.get(c) for c in columns}


# ----------------------------------------------------------------------------- reading


def _read_text_rows(path: Path, fmt: str, columns: Sequence[str] | None) -> tuple[list[dict], bool, tuple[str, ...]]:
    """Rows of a CSV / JSONL file; ``(rows, dropped_tail, columns)``.

    Only the *last* record may be damaged (it is dropped); a damaged record
    before it means the file is not one of ours, and raises ValueError.
    """
    text = path.read_bytes().decode("utf-8", errors=_ERRORS)
    if not text:
        return [], False, tuple(columns or ())
    cut = text.rfind("\n") + 1
    dropped = cut < len(text)  # bytes after the last newline: a write cut short
    text = text[:cut]
    rows: list[dict] = []
    if fmt == "jsonl":
        cols = tuple(columns) if columns else None
        lines = text.splitlines()
        for i, line in enumerate(lines):
            try:
                obj = json.loads(line)
                if cols is None:
                    cols = tuple(obj)
                rows.append(_check_json_row(obj, cols))
            except (ValueError, TypeError) as exc:
                if i == len(lines) - 1:
                    dropped = True
                    break
                raise ValueError(f"{str(path)!r} line {i + 1}: not a score row ({exc}); "
                                 "delete the file or pass --overwrite") from None
        return rows, dropped, tuple(cols or columns or ())
    records = []
    try:
        for rec in csv.reader(io.StringIO(text, newline="")):
            records.append(rec)
    except csv.Error:  # e.g. an unterminated quote in a record cut short
        dropped = True
    if not records:
        return [], dropped, tuple(columns or ())
    header = tuple(records[0])
    if "path" not in header or "score" not in header:
        raise ValueError(f"{str(path)!r}: header {list(header)} is not a score file's "
                         f"(expected {list(columns or BASE_COLUMNS)}); delete it or pass --overwrite")
    for i, rec in enumerate(records[1:], 2):
        try:
            if len(rec) != len(header):
                raise ValueError(f"{len(rec)} fields, expected {len(header)}")
            rows.append(_parse_row(dict(zip(header, rec))))
        except ValueError as exc:
            if i == len(records):
                dropped = True
                break
            raise ValueError(f"{str(path)!r} record {i}: not a score row ({exc}); "
                             "delete the file or pass --overwrite") from None
    return rows, dropped, header


def read_rows(path: str | os.PathLike, fmt: str | None = None) -> list[dict[str, Any]]:
    """All rows of a score file (a truncated last CSV/JSONL record is ignored)."""
    path = Path(path)
    fmt = fmt or output_format(path)
    if fmt == "parquet":
        require_pyarrow()
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
        for r in rows:  # restore non-UTF-8 names from their exact bytes
            raw = r.pop("path_bytes", None)
            if raw is not None:
                r["path"] = os.fsdecode(raw)
        return rows
    return _read_text_rows(path, fmt, None)[0]


# ----------------------------------------------------------------------------- writing


def _utf8_ok(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:  # lone surrogates: a file name that is not UTF-8
        return False


def _encode_text(rows: Iterable[dict], columns: Sequence[str], fmt: str, header: bool) -> str:
    buf = io.StringIO(newline="")
    if fmt == "jsonl":
        for r in rows:
            obj = {c: r.get(c) for c in columns}
            if obj.get("score") is not None:
                obj["score"] = float(obj["score"])
                if not math.isfinite(obj["score"]):
                    obj["score"] = None
            line = json.dumps(obj, ensure_ascii=False)
            if not _utf8_ok(line):  # a non-UTF-8 file name: \udcXX escapes, ASCII, lossless
                line = json.dumps(obj, ensure_ascii=True)
            buf.write(line + "\n")
        return buf.getvalue()
    w = csv.writer(buf, lineterminator="\n")
    if header:
        w.writerow(columns)
    for r in rows:
        w.writerow([_fmt_cell(c, r.get(c)) for c in columns])
    return buf.getvalue()


def write_rows(path: str | os.PathLike, rows: Sequence[dict], columns: Sequence[str], fmt: str | None = None) -> Path:
    """Write ``rows`` to ``path`` atomically (``fastood._io.atomic_write``: temp file in the same
    directory, fsync, ``os.replace``; the file gets ``0666 & ~umask``)."""
    path = Path(path)
    fmt = fmt or output_format(path)
    if fmt == "parquet":
        pa = require_pyarrow()
        import pyarrow.parquet as pq

        types = {"path": pa.string(), "score": pa.float32(), "pred": pa.int64(),
                 "pred_label": pa.string(), "is_ood": pa.bool_()}
        fields = [(c, types.get(c, pa.string())) for c in columns]
        records = [{c: r.get(c) for c in columns} for r in rows]
        if any(isinstance(r.get("path"), str) and not _utf8_ok(r["path"]) for r in records):
            fields.append(("path_bytes", pa.binary()))
            for r in records:
                p = r.get("path")
                r["path_bytes"] = None if p is None or _utf8_ok(p) else os.fsencode(p)
                if r["path_bytes"] is not None:
                    r["path"] = r["path_bytes"].decode("utf-8", errors="replace")
        table = pa.Table.from_pylist(records, schema=pa.schema(fields))
        return atomic_write(path, lambda tmp: pq.write_table(table, tmp))
    data = _encode_text(rows, columns, fmt, header=True).encode("utf-8", errors=_ERRORS)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return atomic_write(path, write)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """``json.dump`` to ``path`` atomically (ASCII: any non-UTF-8 file name is ``\\udcXX``-escaped)."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="ascii") as f:
            f.write(text)

    return atomic_write(path, write)


class RowJournal:
    """Append-only CSV / JSONL row file, one ``flush`` + ``fsync`` per :meth:`append`.

    Opening an existing file resumes it: its rows are read (``self.rows``), a
    truncated last record is dropped and the file rewritten atomically without
    it (``self.dropped_tail``). A CSV file whose header differs from
    ``columns`` raises ValueError (it was written with other settings).
    """

    def __init__(self, path: str | os.PathLike, columns: Sequence[str], fmt: str | None = None) -> None:
        self.path = Path(path)
        self.columns = tuple(columns)
        self.fmt = fmt or output_format(self.path)
        if self.fmt not in ("csv", "jsonl"):
            raise ValueError(f"a journal is CSV or JSON Lines, got {self.fmt!r} for {str(self.path)!r}")
        self.rows: list[dict[str, Any]] = []
        self.dropped_tail = False
        if self.path.exists() and self.path.stat().st_size > 0:
            rows, dropped, found = _read_text_rows(self.path, self.fmt, self.columns)
            if self.fmt == "csv" and tuple(found) != self.columns:
                raise ValueError(f"{str(self.path)!r} has columns {list(found)} but this run writes "
                                 f"{list(self.columns)} (threshold set differently?); use another output "
                                 "or pass --overwrite")
            self.rows, self.dropped_tail = rows, dropped
            if dropped:
                write_rows(self.path, rows, self.columns, self.fmt)
            self._f = open(self.path, "a", encoding="utf-8", errors=_ERRORS, newline="")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "w", encoding="utf-8", errors=_ERRORS, newline="")
            if self.fmt == "csv":
                self._f.write(_encode_text([], self.columns, "csv", header=True))
                self._sync()

    def _sync(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())

    def done(self) -> set[str]:
        """Paths already present."""
        return {r["path"] for r in self.rows}

    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        """Append ``rows`` as one write, then flush and fsync."""
        if not rows:
            return
        self._f.write(_encode_text(rows, self.columns, self.fmt, header=False))
        self._sync()

    def close(self) -> None:
        if not self._f.closed:
            self._sync()
            self._f.close()

    def __enter__(self) -> "RowJournal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def path_key(path: str) -> str:
    """The identity of an image path when resuming and merging: ``os.path.realpath`` (absolute,
    symbolic links resolved), so ``imgs/a.png``, ``./imgs/a.png`` and ``/data/imgs/a.png`` are
    one image and one row. Relative paths resolve against the current directory."""
    return os.path.realpath(path)


def check_existing_output(path: str | os.PathLike, fmt: str | None = None) -> list[dict[str, Any]]:
    """The rows of an existing output file, or ValueError saying it is not a score file of ``fmt``
    (e.g. a CSV renamed ``.parquet``) and how to start again."""
    path = Path(path)
    fmt = fmt or output_format(path)
    try:
        return read_rows(path, fmt)
    except ImportError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow / csv / json raise many types; all mean "not ours"
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{str(path)!r} exists but is not a readable {fmt} score file ({msg}); delete it, "
                         "pass --overwrite or choose another --out") from None


def finalize(
    out: str | os.PathLike,
    sources: Sequence[str | os.PathLike],
    columns: Sequence[str],
    order: Sequence[str] | None = None,
    key: Callable[[str], str] | None = None,
) -> list[dict[str, Any]]:
    """Merge the rows of ``out`` (if it exists) and of every source file into ``out``.

    One row per image (a later source wins), sorted by position in ``order`` (paths not in
    it last, by name); written atomically. Images are identified by ``key(path)`` (default:
    the path string; ``fastood score`` passes :func:`path_key`, so another spelling of the
    same file is the same row) and a row of an image in ``order`` is written with the
    spelling ``order`` gives. Source files that do not exist are ignored. Returns the rows
    written.
    """
    out = Path(out)
    ident = key or (lambda p: p)
    merged: dict[str, dict[str, Any]] = {}
    srcs = [Path(s) for s in sources]
    if out.exists() and out.resolve() not in {s.resolve() for s in srcs if s.exists()}:
        for r in read_rows(out):
            merged[ident(r["path"])] = r
    for s in srcs:
        if s.exists() and s.stat().st_size > 0:
            for r in _read_text_rows(s, output_format(s), columns)[0]:
                merged[ident(r["path"])] = r
    pos: dict[str, int] = {}
    spelling: dict[str, str] = {}
    for i, p in enumerate(order or ()):
        pos.setdefault(ident(p), i)
        spelling.setdefault(ident(p), p)
    rows = [dict(r, path=spelling[k]) if k in spelling else r for k, r in merged.items()]
    rows.sort(key=lambda r: (pos.get(ident(r["path"]), len(pos)), r["path"]))
    write_rows(out, rows, columns)
    return rows
