"""Data: reading files of any layout into records, the R1 chat format, shards, tokenized tables, duplicates, terms."""
