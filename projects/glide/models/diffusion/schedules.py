"""Beta schedules and timestep respacing for GLIDE.

The formulas follow openai's improved-diffusion / guided-diffusion /
glide-text2im code (MIT licence): ``get_named_beta_schedule``,
``betas_for_alpha_bar`` and ``space_timesteps`` there.  This module is an
independent implementation of the same rules; every array is float64 numpy,
exactly like the reference, so the derived coefficients agree bit for bit.

Respacing specs (``T`` = number of training steps, 1000 for GLIDE):

* ``int N`` (1 <= N <= T, our own contract): ``N`` evenly strided timesteps.
  When some integer stride yields exactly ``N`` steps this is the reference's
  ``'ddimN'`` (for divisors of 1000: ``range(0, 1000, 1000 // N)``), otherwise
  the reference's single-section spec ``str(N)``.  Always exactly ``N`` steps.
* ``'ddimN'``: ``range(0, T, s)`` for the smallest stride ``s`` in ``1..T-1``
  giving exactly ``N`` steps (error if there is none).
* ``'fast27'``: the sections ``'10,10,3,2,2'`` with their last step
  ``T - 1`` replaced by ``T - 3`` (glide-text2im; GLIDE's upsampler
  default), i.e. 27 steps ending at 997 for T = 1000.
* ``'c1,c2,...'``: ``T`` is split into ``len(counts)`` near-equal sections (the
  first ``T % len(counts)`` one step longer); section ``i`` contributes
  ``c_i`` steps at rounded, evenly spaced fractional offsets.  ``'100'`` is a
  single section of 100 steps.
"""
import math
import numbers
import re
from typing import Callable, List, Set, Union

import numpy as np

RespacingSpec = Union[int, str]

BETA_SCHEDULES = ('linear', 'squaredcos_cap_v2')

ACCEPTED_SPEC_FORMS = (
    "an int N with 1 <= N <= num_train_timesteps (N evenly strided steps), "
    "'ddimN' (stride-based spacing, e.g. 'ddim25'), 'fast27', or "
    "comma-separated section counts (e.g. '100', '50', '10,10,3,2,2')")


def betas_for_alpha_bar(num_diffusion_timesteps: int,
                        alpha_bar: Callable[[float], float],
                        max_beta: float = 0.999) -> np.ndarray:
    """Discretise a continuous ``alpha_bar(t)``, t in [0, 1], into betas.

    ``beta_i = min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta)``
    (Nichol & Dhariwal 2021; same rule as openai's ``betas_for_alpha_bar``).
    """
    betas = []
    for i in range(num_diffusion_timesteps):
        t1 = i / num_diffusion_timesteps
        t2 = (i + 1) / num_diffusion_timesteps
        betas.append(min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta))
    return np.array(betas, dtype=np.float64)


def _cosine_alpha_bar(t: float) -> float:
    return math.cos((t + 0.008) / 1.008 * math.pi / 2)**2


def get_named_beta_schedule(schedule_name: str,
                            num_diffusion_timesteps: int = 1000
                            ) -> np.ndarray:
    """Return the float64 betas of a named schedule.

    * ``'linear'``: ``linspace(scale * 1e-4, scale * 0.02, T)`` with
      ``scale = 1000 / T`` (Ho et al. 2020, scaled to any ``T``).
    * ``'squaredcos_cap_v2'``: the cosine schedule of Nichol & Dhariwal 2021,
      ``alpha_bar(t) = cos((t + 0.008) / 1.008 * pi / 2) ** 2``, betas capped
      at 0.999.  GLIDE uses this one.
    """
    _check_num_timesteps(num_diffusion_timesteps)
    if schedule_name == 'linear':
        scale = 1000 / num_diffusion_timesteps
        return np.linspace(
            scale * 0.0001,
            scale * 0.02,
            num_diffusion_timesteps,
            dtype=np.float64)
    if schedule_name == 'squaredcos_cap_v2':
        return betas_for_alpha_bar(num_diffusion_timesteps, _cosine_alpha_bar)
    raise ValueError(f'Unknown beta schedule {schedule_name!r}; accepted: '
                     f'{", ".join(repr(s) for s in BETA_SCHEDULES)}.')


def _check_num_timesteps(num_timesteps) -> None:
    if (not isinstance(num_timesteps, numbers.Integral)
            or isinstance(num_timesteps, bool) or num_timesteps < 1):
        raise ValueError('num_train_timesteps must be a positive int, got '
                         f'{num_timesteps!r}.')


def _bad_spec(spec, why: str) -> ValueError:
    return ValueError(f'Invalid timestep respacing spec {spec!r}: {why}. '
                      f'Accepted forms: {ACCEPTED_SPEC_FORMS}.')


def _parse_count(spec, text: str) -> int:
    text = text.strip()
    if re.fullmatch('[0-9]+', text) is None:
        raise _bad_spec(spec, f'{text!r} is not a non-negative integer')
    return int(text)


def _ddim_steps(spec, num_timesteps: int, desired_count: int) -> Set[int]:
    for stride in range(1, num_timesteps):
        if len(range(0, num_timesteps, stride)) == desired_count:
            return set(range(0, num_timesteps, stride))
    raise _bad_spec(
        spec, f'no integer stride gives exactly {desired_count} steps out of '
        f'{num_timesteps}')


def _section_steps(spec, num_timesteps: int, counts: List[int]) -> Set[int]:
    size_per = num_timesteps // len(counts)
    extra = num_timesteps % len(counts)
    start_idx = 0
    all_steps = []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise _bad_spec(
                spec, f'section {i} has {size} timesteps, cannot take '
                f'{count}')
        frac_stride = 1 if count <= 1 else (size - 1) / (count - 1)
        # Accumulate the fractional offset (rather than k * stride) so that
        # rounding matches openai's space_timesteps bit for bit.
        cur_idx = 0.0
        for _ in range(count):
            all_steps.append(start_idx + round(cur_idx))
            cur_idx += frac_stride
        start_idx += size
    steps = set(all_steps)
    if not steps:
        raise _bad_spec(spec, 'it selects no timestep')
    return steps


def space_timesteps(num_timesteps: int, spec: RespacingSpec) -> Set[int]:
    """Return the set of original timesteps kept by a respacing ``spec``.

    See the module docstring for the accepted forms.  Raises ``TypeError``
    for a spec of the wrong type and ``ValueError`` for a malformed or
    impossible one; both messages name the spec and the accepted forms.
    """
    _check_num_timesteps(num_timesteps)
    if isinstance(spec, bool) or not isinstance(spec,
                                                (numbers.Integral, str)):
        raise TypeError(
            f'Invalid timestep respacing spec {spec!r} of type '
            f'{type(spec).__name__}. Accepted forms: {ACCEPTED_SPEC_FORMS}.')
    if isinstance(spec, numbers.Integral):
        n = int(spec)
        if not 1 <= n <= num_timesteps:
            raise _bad_spec(
                spec, f'an int spec must lie in [1, {num_timesteps}]')
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == n:
                return set(range(0, num_timesteps, stride))
        return _section_steps(spec, num_timesteps, [n])

    text = spec.strip()
    if text.startswith('ddim'):
        count = _parse_count(spec, text[len('ddim'):])
        if count < 1:
            raise _bad_spec(spec, 'ddimN needs N >= 1')
        return _ddim_steps(spec, num_timesteps, count)
    if text.startswith('fast'):
        if text != 'fast27':
            raise _bad_spec(spec, "the only 'fast' spec is 'fast27'")
        # glide-text2im: the sections '10,10,3,2,2' (whose last step is
        # T - 1), with T - 1 swapped for T - 3 to reduce DDIM artifacts from
        # the noisiest timestep.  (The reference fixture ends at 997.)
        steps = _section_steps(spec, num_timesteps, [10, 10, 3, 2, 2])
        steps.discard(num_timesteps - 1)
        steps.add(num_timesteps - 3)
        return steps
    if not text:
        raise _bad_spec(spec, 'empty spec')
    counts = [_parse_count(spec, part) for part in text.split(',')]
    return _section_steps(spec, num_timesteps, counts)


def respaced_timesteps(spec: RespacingSpec,
                       num_train_timesteps: int = 1000) -> List[int]:
    """Sorted (ascending) list of the original timesteps kept by ``spec``."""
    return sorted(space_timesteps(num_train_timesteps, spec))


def respace_betas(betas: np.ndarray, use_timesteps) -> np.ndarray:
    """Betas of the process that keeps only ``use_timesteps``.

    ``beta'_k = 1 - abar[t_k] / abar[t_{k-1}]`` (with ``abar[t_{-1}] = 1``),
    where ``abar`` is the float64 cumulative product of ``1 - betas``; this is
    what openai's ``SpacedDiffusion`` does.
    """
    alphas_cumprod = np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))
    keep = set(int(t) for t in use_timesteps)
    last_alpha_cumprod = 1.0
    new_betas = []
    for i, alpha_cumprod in enumerate(alphas_cumprod):
        if i in keep:
            new_betas.append(1 - alpha_cumprod / last_alpha_cumprod)
            last_alpha_cumprod = alpha_cumprod
    return np.array(new_betas, dtype=np.float64)
