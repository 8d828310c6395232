# Runs first after every reset. Nothing here may turn a FET on: main.py
# creates the FET pins at their off level before anything else runs.
import gc

gc.collect()
