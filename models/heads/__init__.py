"""Draft-head families, one file each (config + module + registration)."""
