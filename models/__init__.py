"""Base models (backbone loading, feature hooks) and draft heads (one file per family in heads/)."""
