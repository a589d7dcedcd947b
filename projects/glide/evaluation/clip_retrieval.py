"""How often a noise-aware CLIP ranks an image's caption above its hard
negatives, per noise level and per kind of negative."""
from collections import defaultdict
from typing import Dict, Sequence

import torch
from mmagic.registry import METRICS
from mmengine.evaluator import BaseMetric

from .samples import sample_field


@METRICS.register_module()
class CLIPRetrievalAccuracy(BaseMetric):
    """Retrieval accuracy of captions against their hard negatives.

    ``process`` takes ``data_samples`` (dicts or data elements, as
    ``NoisedCLIPModel.predict`` returns them) with ``timesteps`` (T ints),
    ``logits`` ((T, 1 + K): column 0 the item's caption, then its negatives)
    and ``negative_types`` (K str).

    ``compute_metrics`` returns ``count`` and, for each timestep ``t``,
    ``t{t}/all``: % of images whose caption scores strictly above all their
    negatives (chance 100 / (1 + K)), and ``t{t}/{type}``: % of (image,
    negative of that type) pairs where the caption scores strictly higher
    (chance 50).
    """
    default_prefix = 'clip_retrieval'

    def process(self, data_batch, data_samples: Sequence) -> None:
        for sample in data_samples:
            logits = torch.as_tensor(sample_field(sample, 'logits')).float().cpu()
            timesteps = [int(t) for t in sample_field(sample, 'timesteps')]
            types = list(sample_field(sample, 'negative_types'))
            if logits.shape != (len(timesteps), 1 + len(types)):
                raise ValueError(f'logits must have shape (timesteps, 1 + negatives) = '
                                 f'({len(timesteps)}, {1 + len(types)}), got {tuple(logits.shape)}')
            wins = (logits[:, :1] > logits[:, 1:]).tolist()  # (T, K)
            self.results.append(dict(timesteps=timesteps, types=types, wins=wins))

    def compute_metrics(self, results: list) -> Dict[str, float]:
        metrics = dict(count=len(results))
        hits = defaultdict(list)
        for r in results:
            for t, wins in zip(r['timesteps'], r['wins']):
                hits[f't{t}/all'].append(all(wins))
                for neg_type, win in zip(r['types'], wins):
                    hits[f't{t}/{neg_type}'].append(win)
        metrics.update({key: 100. * sum(v) / len(v) for key, v in sorted(hits.items())})
        return metrics
