"""The content-addressed artifact cache: keys, locked entries, checksums, atomic writes."""
