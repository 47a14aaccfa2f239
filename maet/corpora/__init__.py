"""Text corpora: loading, framing and packing documents (`data`), and fetching MGSM, GSM8K
and text samples (`python -m maet.corpora.fetch_data`)."""
