"""What real runs add around the core (train.py, eval.py and the modules they import), which never imports
this package at module level: train.launcher and eval.extension are the only doors in.

  run.py        train.py's run under launch/: the same eight steps across torchrun's processes, resumable
  cli.py        launch/'s flags (--resume, --save-every, --eval-every, --plan, --gpu-mem, --base-from) and
                their checks; the memory plan of a run's flags
  plan.py       the memory plan: what a run needs on each GPU or in RAM, and the smallest change that fits
  fsdp.py       torchrun with FSDP2: the process group, sharded loading and saving, the collectives
  runfolder.py  the run folder <out>.partial, resumable checkpoints, metrics, faults (fit's hooks)
  analyses.py   eval.py's additions: the paper's Fig. 2 analyses, the memory check of a decoding
"""
