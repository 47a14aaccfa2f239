"""The command-line edge: checks a schema cannot express (ranges, cross-field, files), every
sweep point checked before a multirun starts, and `--help` generated from `conf/`."""
