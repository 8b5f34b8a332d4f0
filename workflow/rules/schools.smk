# The eight-schools experiment (gold-standard HMC, ADVI, AVB). Targets are added to `rule all` via SCHOOLS_TARGETS.
SCHOOLS_TARGETS = []
