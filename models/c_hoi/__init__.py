"""C-HOI (Zhou et al. 2020): cascade HOI recognition — relation ranking and classification, mAP_role."""
