"""ART: learned timestep schedules for EDM samplers (Huang, Tang, Zhou 2026, arXiv 2601.18681).

Modules: `analytic` (exact-denoiser models), `networks` (load a network by spec), `error_density` (the field f and
the error density Q), `schedules` (the time change, the schedule file, named baselines), `closed_form` (the
training-free ART optimum), `rl`, `rl_time`, `rl_progress` (ART-RL: the shared part, the paper's learner, the
progress-domain learner). The method: docs/method.md; the two ART-RL learners: docs/art-rl.md.
"""
