# openbms: battery management logic that imports no `machine`.
