"""Taking networks apart without training them.

    arithmetic.py  the only owner of the output-size, parameter, FLOP, memory and receptive-field formulas
    summary.py     a per-layer table of any model, traced without allocating anything
    convert.py     FC -> conv: a classifier's dense head as convolutions that slide over larger images
    invariance.py  a trained network's answers on shifted images: accuracy and logit change per shift
"""
