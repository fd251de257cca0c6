"""kaiko-eva evaluation of base and MINT models (DESIGN 6.2).

- `mint.eva.backbone.MintBackbone`: the backbone class eva instantiates from its YAML.
- `mint.eva.tasks`: the tasks, eva's leaderboard protocol, where their data lives.
- `mint.eva.render`: our YAML templates (`mint/eva/templates/`) -> eva configs per model/task/stage.
- `mint.eva.run`: runs the real `eva predict` / `eva fit`, copies eva's results.json.
- `mint.eva.summary`: summary table and the published leaderboard.
- `mint.eva.synthetic` / `mint.eva.dataset`: the demo's synthetic task and its eva dataset class.

Submodules are imported on use: importing `mint.eva` (or `mint.eva.tasks`) does not import eva.
"""
