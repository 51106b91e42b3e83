"""Module-level functions for the MPCS contract tests; dill pickles these by reference, so the
workers resolve them through --python-path."""

import time


def double(x):
    return 2 * x


def nap(seconds):
    time.sleep(seconds)
    return "rested %s" % seconds


def explode(message):
    raise ValueError(message)


def make_generator():
    return (i for i in range(3))
