"""CHORUS (Han et al. 2023): object categories -> prompts -> images -> filtered, calibrated views ->
canonical 3D human-object occupancy grids per semantic cluster, evaluated with PAP.

    lexicon.py      categories, verbs and how the procedural stand-in stages each interaction
    prompts.py      the prompts pipeline: offline generator or an OpenAI-compatible LLM; 22 view phrases
    scenes.py       procedural STAND-IN scenes: body + object primitive, exact masks, keypoints, camera
    perception.py   instance segmentation + 2D keypoints behind one interface; the paper's filter rules
    calibration.py  SMPL fitted to 2D keypoints; perspective camera in the person-centric frame
    views.py        the views pipeline: prompts -> images -> perception -> filter -> calibration
    occupancy.py    the occupancy pipeline: views -> canonical grids per cluster, meshes, PAP
The geometry (LBS grid, aggregation, PAP) is in models/chorus/.
"""
