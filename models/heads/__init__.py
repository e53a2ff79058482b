"""Draft-head families, one file each (config + module + registration).

Importing this package registers every family; add a new family's module to the import below.
"""

from draftheads.models.heads import clover, eagle, hydra, medusa  # noqa: F401  (registers each family)
