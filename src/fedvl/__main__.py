from fedvl.cli import entry

raise SystemExit(entry())
