# The four-image toy experiment (exact log p(x) by quadrature). Targets are added to `rule all` via TOY_TARGETS.
TOY_TARGETS = []
