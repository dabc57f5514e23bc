"""Schema revisions, oldest first; each is history and never imports the current models' data."""
