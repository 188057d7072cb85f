"""Data: MM-CTR schema, parquet IO and validation, synthetic worlds."""
