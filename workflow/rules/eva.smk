# Stage `eva`: placeholder until the eva rules land.
