"""`qtts-eval fixtures`: list the fixtures, rewrite their manifest, or re-record the wire transcripts."""

from __future__ import annotations

import argparse
from typing import Any

from qtts_eval.fixtures import fixtures_dir, load_fixtures, write_manifest


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("fixtures", help="list fixtures or rewrite their manifest")
    parser.add_argument("--rehash", action="store_true", help="rewrite manifest.json from the files on disk")
    parser.add_argument("--version", help="with --rehash: the new fixture-set version")
    parser.add_argument(
        "--write-transcripts",
        action="store_true",
        help="re-record the golden protocol sessions (fixtures/transcripts/) from the suite's server",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.write_transcripts:
        from qtts_eval.wire.transcripts import write_transcripts

        for path in write_transcripts():
            print(f"wrote {path}")
    if args.rehash:
        path = write_manifest(fixtures_dir(), args.version)
        print(f"rewrote {path}")
    fixtures = load_fixtures()
    print(f"fixtures {fixtures.version} ({fixtures.content_hash[:12]}) in {fixtures.root}")
    for text in fixtures.texts.values():
        print(f"  text  {text.id:<18} {text.language:<9} {text.category:<14} {len(text.text):>4} chars")
    for voice in fixtures.voices.values():
        print(f"  voice {voice.id:<18} {voice.gender:<9} {voice.accent:<14} {voice.speaker}")
    return 0
