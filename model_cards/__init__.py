"""Model-card templates, shipped as package data so that an installed (non-editable) copy can publish."""
