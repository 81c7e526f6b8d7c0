"""Data: sequence layouts, serialised records, Grain loaders."""
