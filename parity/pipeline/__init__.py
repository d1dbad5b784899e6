"""Pipeline parity, framework-free: the Open-Sora-Plan v1.3 sampler's settings and hand-checked schedule
(``schedule``), recorded noise (``noise``), the CFG denoising loop over any model callable and scheduler adapter
(``loop``), deliberately wrong sampler variants (``variants``) and per-step tolerances (``tolerances``).
Scheduler adapters live beside each framework: ``reference_torch.euler_ancestral`` (diffusers) and
``ms_impl.mindone_euler_ancestral`` (mindone.diffusers)."""
