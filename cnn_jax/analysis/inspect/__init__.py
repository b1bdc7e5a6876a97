"""Looking inside a trained network: what its layers compute, what its filters are, and which pixels decide.

    taps.py  every spatial layer's output from one forward pass, by name, and the pass with one output changed
"""
