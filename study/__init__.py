"""Studies: sweeps of config keys over several seeds (Optuna), read back for reports.

``space`` parses search spaces, ``storage`` opens the Optuna storage of a study folder, ``trial`` runs one
training run, ``worker`` takes trials from a study until it is done, ``results`` reads trials back.
"""
