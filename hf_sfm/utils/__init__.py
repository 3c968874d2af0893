"""Run-wide helpers with no knowledge of distillation: atomic owned files, library versions, process groups and
numeric precision. The bottom layer: nothing here imports another part of hf_sfm."""
