"""What a network costs: parameters, MACs, latency, training-step time and memory (`mmhvae info`,
`mmhvae benchmark`)."""
