"""White-box visual jailbreaks: projected gradient descent on an image's pixels (Qi et al., AAAI 2024).

`pgd` is the jitted step (loss, signed gradient, projection), `corpus` the targets it pulls the model towards,
`image` the attacked pixels (the processor's geometry, 8-bit quantisation, PNG), `run` the resumable loop behind
`vlguard-jax attack`.
"""
