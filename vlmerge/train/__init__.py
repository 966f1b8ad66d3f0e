"""The shared Lightning layer of the training stages: trainer factory, optimiser groups and schedule,
resumable sampler, SLURM requeue, work directories, progress and seeded streams.

Lightning composes, it does not own: stages build or load the model before a Trainer exists and hand
the built model to their LightningModule. Import the submodules directly (nothing is re-exported, so
that importing one piece does not import the rest).
"""
