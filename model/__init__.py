"""Model, tokenizer and the training entry point. No Prefect here."""
