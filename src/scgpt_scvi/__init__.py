"""scGPT single-cell transformers as an scvi-tools plugin."""
