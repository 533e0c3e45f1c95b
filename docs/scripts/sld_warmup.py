"""How strongly SLD steers a digits pipeline away from its concept, by warmup step (docs/image.md).

    python docs/scripts/sld_warmup.py --model ./digits-pipeline --digit 0 [--per-prompt 4] [--seed 100]

For each SLD warmup (the other SLD settings: SafetySpec's defaults, diffusers' MEDIUM), generates the
concept's prompts file under SD and SD+SLD from shared initial noise (rrf_ray.image.pipeline, the
sweep's own two-branch steps), decodes the final images and has the pipeline's judge say how often the
concept digit appears under each, and how often SD+SLD keeps SD's digit on prompts that do not name
the concept. Use a --seed the sweep does not (its chains use seed 0): this chooses a setting.
"""

import argparse

import numpy as np
import torch

from rrf_ray.image.digits import DIGIT_WORDS, DigitJudge
from rrf_ray.image.evaluate import decode
from rrf_ray.image.pipeline import latent_chains, load_components, read_prompts
from rrf_ray.image.spec import GenerationSpec, SafetySpec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--digit", type=int, required=True)
    p.add_argument("--per-prompt", type=int, default=4)
    p.add_argument("--seed", type=int, default=100)
    p.add_argument("--warmups", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance-scale", type=float, default=5.0)
    args = p.parse_args()
    torch.set_num_threads(1)
    prompts = [q for q in read_prompts(f"{args.model}/prompts/{args.digit}.txt") for _ in range(args.per_prompt)]
    components, judge = load_components(args.model), DigitJudge.from_pipeline(args.model)
    gen = GenerationSpec(model=args.model, prompts="-", steps=args.steps, guidance_scale=args.guidance_scale,
                         latent_size=8, dtype="float32")
    word, n = DIGIT_WORDS[args.digit], len(prompts)
    other = np.array([word not in q for q in prompts])
    print(f"digit {args.digit}: {n} images per pipeline, seed {args.seed}")
    for warmup in args.warmups:
        safety = SafetySpec(concept=f"a handwritten {word}", warmup_steps=warmup)
        out = latent_chains(components, prompts, list(range(n)), gen, safety, args.seed)
        last = slice(-2 * n, None)  # the last step's rows: n SD chains, then n SD+SLD chains
        final = np.where((out["chain_kind"][last] == 2)[:, None, None, None], out["x_expert"][last], out["x_base"][last])
        digits = judge.predict(decode(args.model, final, "float32", False))
        sd, sld = digits[:n], digits[n:]
        print(f"warmup {warmup}: concept rate SD {np.mean(sd == args.digit):.3f}, SD+SLD {np.mean(sld == args.digit):.3f};"
              f" non-concept prompts keep SD's digit {np.mean(sld[other] == sd[other]):.3f}", flush=True)


if __name__ == "__main__":
    main()
