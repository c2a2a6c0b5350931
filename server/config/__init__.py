"""Config: the settings declared once, YAML loading with lines, conversion, and `porch check`'s report."""
