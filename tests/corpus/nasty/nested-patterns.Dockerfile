FROM scratch
ENV A=${A//*/${A//*/${A//*/x}}}
