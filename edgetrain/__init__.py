"""edgetrain (being built)."""
