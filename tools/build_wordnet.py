#!/usr/bin/env python
"""Regenerate fastood's shipped WordNet 3.0 word lists.

Reads the WordNet 3.0 database files ``data.noun`` and ``data.adj`` directly
(no NLTK; Debian/Ubuntu: ``apt-get install wordnet-base`` puts them in
``/usr/share/wordnet``) and writes

    fastood/data/wordnet_nouns.tsv.gz
    fastood/data/wordnet_adjs.tsv.gz
    fastood/data/WORDNET_LICENSE

Each TSV has a header row and one row per (synset, lemma), in data-file order
(ascending synset offset, then lemma order inside the synset):

    lemma      the lemma as stored (original case, '_' for spaces); the
               adjective syntactic marker "(a)", "(p)" or "(ip)" is stripped
               (the same as NLTK's lemma names)
    pos        'n' or 'a' (satellite adjectives 's' are written as 'a')
    satellite  1 for a satellite adjective synset, else 0
    lexname    lexicographer file name, e.g. noun.artifact, adj.all
    offset     synset byte offset in the data file (8 digits, as in WordNet)
    lemma_idx  0-based index of the lemma inside its synset
               (lemma_idx == 0 selects "the first lemma of each synset")

The files are gzipped with mtime=0 and no stored file name, so regenerating
from the same WordNet files gives byte-identical output.

Usage: python tools/build_wordnet.py [--wordnet-dir DIR] [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import sys

# Lexicographer file numbers -> names (WordNet 3.0, lexnames(5WN)).
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal",
    "noun.artifact", "noun.attribute", "noun.body", "noun.cognition",
    "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person",
    "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state",
    "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition",
    "verb.communication", "verb.competition", "verb.consumption",
    "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative",
    "verb.weather", "adj.ppl",
)

HEADER = "lemma\tpos\tsatellite\tlexname\toffset\tlemma_idx\n"
ADJ_MARKERS = ("(a)", "(p)", "(ip)")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_data_file(path: str, expected_pos: str) -> list[tuple[str, str, int, str, str, int]]:
    """Rows (lemma, pos, satellite, lexname, offset, lemma_idx) of one data.* file."""
    rows = []
    with open(path, "r", encoding="utf-8") as f:
        for line in f:
            if line.startswith("  "):  # licence header lines start with two spaces
                continue
            fields = line.split(" ")
            offset, lex_filenum, ss_type = fields[0], int(fields[1]), fields[2]
            n_words = int(fields[3], 16)
            if ss_type == "s":
                pos, satellite = "a", 1
            else:
                pos, satellite = ss_type, 0
            if pos != expected_pos:
                raise ValueError(f"{path}: synset {offset} has type {ss_type!r}")
            lexname = LEXNAMES[lex_filenum]
            for i in range(n_words):
                lemma = fields[4 + 2 * i]
                for marker in ADJ_MARKERS:
                    if lemma.endswith(marker):
                        lemma = lemma[: -len(marker)]
                        break
                rows.append((lemma, pos, satellite, lexname, offset, i))
    return rows


def licence_text(data_path: str) -> str:
    """The WordNet 3.0 licence, as printed in the header of the data file."""
    lines = []
    with open(data_path, "r", encoding="utf-8") as f:
        for line in f:
            if not line.startswith("  "):
                break
            # header lines: two spaces, a line number, a space, the text
            _, _, rest = line[2:].partition(" ")
            lines.append(rest.rstrip())
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines) + "\n"


def write_tsv_gz(path: str, rows) -> None:
    text = HEADER + "".join(
        f"{lemma}\t{pos}\t{sat}\t{lexname}\t{offset}\t{idx}\n"
        for lemma, pos, sat, lexname, offset, idx in rows
    )
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(text.encode("utf-8"))
    with open(path, "wb") as f:
        f.write(buf.getvalue())


def build(wordnet_dir: str, out_dir: str) -> dict[str, int]:
    os.makedirs(out_dir, exist_ok=True)
    noun_path = os.path.join(wordnet_dir, "data.noun")
    adj_path = os.path.join(wordnet_dir, "data.adj")
    nouns = parse_data_file(noun_path, "n")
    adjs = parse_data_file(adj_path, "a")
    write_tsv_gz(os.path.join(out_dir, "wordnet_nouns.tsv.gz"), nouns)
    write_tsv_gz(os.path.join(out_dir, "wordnet_adjs.tsv.gz"), adjs)
    header = (
        "WordNet 3.0 licence (applies to wordnet_nouns.tsv.gz and\n"
        "wordnet_adjs.tsv.gz, which are extracted from the WordNet 3.0 database\n"
        "by tools/build_wordnet.py).\n\n"
    )
    with open(os.path.join(out_dir, "WORDNET_LICENSE"), "w", encoding="utf-8", newline="\n") as f:
        f.write(header + licence_text(noun_path))
    return {"nouns": len(nouns), "adjs": len(adjs)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--wordnet-dir", default="/usr/share/wordnet")
    p.add_argument("--out-dir", default=os.path.join(REPO_ROOT, "fastood", "data"))
    args = p.parse_args(argv)
    if not os.path.exists(os.path.join(args.wordnet_dir, "data.noun")):
        print(f"no data.noun in {args.wordnet_dir} (apt-get install wordnet-base)", file=sys.stderr)
        return 1
    counts = build(args.wordnet_dir, args.out_dir)
    print(f"wrote {counts['nouns']} noun rows, {counts['adjs']} adjective rows to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
