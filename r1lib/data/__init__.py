"""Data: reading files of any layout into records, the R1 chat format, shards, tokenized tables, duplicates, terms.

Reading files: readers (iter_raw_rows picks the reader by suffix), inputs (an input spec's files, opened within the
allowed roots), lines (bounded line reading), json_rows, csv_scan, csv_rows and parquet_rows. Records: records (the
record model and its schema), row_formats (detecting a row's format and normalizing it), columns (column mappings and
the R1/QA layouts recognized by name), row_rules (tools, placeholders), preference (preference rows read for a
preference trainer), preference_tokens (preference rows tokenized with the R1 template). The chat format: chat_template
(the R1 format), chat_render (the fast renderer), template_inspection (what a template does with the contents),
template_sandbox (every template rendered in a budget of memory and time). Then shards, tokenized, duplicates, terms,
counterfactual with its word lists (person_words), and language (a row's language, for augmentation).
"""
