"""Torch engines: the hand-written BPTT on torch tensors (CPU or CUDA), and two references.

  common.py, rnn.py, lstm.py, gru.py   one layer, one direction: forward and its derived BPTT,
                                       the same equations and structure as ``engine/numpy``
  stack.py                             layers x directions x dropout, and ``StackFunction``,
                                       the stack as a ``torch.autograd.Function`` whose
                                       backward is our BPTT (not autograd of the loop)
  unrolled.py                          the book's loop over time steps, differentiated by autograd
  model.py                             the engines ``torch``, ``torch-autograd``, ``torch-builtin``
"""
