"""fcn_jax: Fully Convolutional Networks (Long, Shelhamer, Darrell 2015) in JAX/Flax."""
