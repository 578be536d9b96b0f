# escapONBUILD ONBUILDe=`
FROM scra["tch
ENV A=a`
    B=b
COPY Dockerfile /x
