"""A simulated Odoo retail estate, incident scenarios with their ground truth, and scoring.

The estate gives detectors and alerting something to be measured against when no real
estate is at hand: :mod:`estate.simulator` produces sample batches like the collectors,
:mod:`estate.scenarios` injects incidents from data files, :mod:`estate.scoring` says how
well the detections matched them.
"""
