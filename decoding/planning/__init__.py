"""Tree planning, one home: what the heads are worth (`stats`: joint rank statistics and the
calibration file), how a decode goes on calibration answers (`walks`: step-by-step replay with the
lookup branch), what each tree costs on this machine (`costs`), and which tree to draft (`search`:
one candidate type, one choice). `--tree auto`, `draftheads tree`, `draftheads calibrate` and
training all plan through it."""
